"""The run machinery: the config (`config`, its cross-key checks in `config_checks`, `secrets`),
the parts built from it (`build`, `parts`), the
run directory (`rundir`), checkpoints (`checkpoint`), metrics files (`metrics`), schedules
(`schedule`) and the training loop (`loop`, with its resumable state in `resume`)."""

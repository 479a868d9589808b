"""The run machinery: the config (`config`, `secrets`), the parts built from it (`build`), the
run directory (`rundir`), checkpoints (`checkpoint`), metrics files (`metrics`), schedules
(`schedule`) and the training loop (`loop`, with its resumable state in `state`)."""

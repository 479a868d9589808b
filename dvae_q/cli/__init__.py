"""The `dvae-q` command line: argument parsing and exit codes over the run API (`main`), the
sampling service's commands (`service`) and `reproduce` (`reproduce`)."""

"""Evaluation of a trained model: the log Z bracket by AIS and reverse AIS (`logz`), the
importance-sampled discrete NLL (`nll`), the scores a run records (`scores`) and the figures
of curves, samples and reconstructions (`figures`)."""

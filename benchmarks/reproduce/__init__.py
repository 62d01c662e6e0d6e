"""Stages of benchmarks/reproduce_fmnist.py: training runs (training.py), the method table
(methods.py), seeded cached sampling (generate.py), scoring (scoring.py) and the report
(report.py). Every stage writes its results under the run folder and skips work already there."""

"""Local building blocks for experiments, demos, benchmarks and tests, in three rooms and one module.

* :mod:`trl_ipo.lab.theory`: the exact finite-action IPO solutions and the softmax-bandit experiment;
* :mod:`trl_ipo.lab.world`: the synthetic world of `trl-ipo demo` (language, ground-truth reward, preference model,
  evaluation);
* :mod:`trl_ipo.lab.experiments`: training the methods, the run records, the claims verdicts and the report;
* :mod:`trl_ipo.lab.tiny`: tiny models and pairs (the public `trl-ipo tiny-model` command, tests, benchmarks).
"""

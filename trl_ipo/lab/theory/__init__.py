"""Theory room: the exact finite-action IPO solutions (closed form, population optimum) and the softmax-bandit
experiment that trains gradient-based IPO and DPO against them (Azar et al. 2023, §5.4)."""

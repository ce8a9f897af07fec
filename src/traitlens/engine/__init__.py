"""The training engine: configs, data splits, checkpoints, training (fit), evaluation, distributed runs.

It trains and scores any built model; which model a method name means is :mod:`traitlens.methods`, one level up.
"""

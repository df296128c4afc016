"""Pretraining lema-tiny, the embedded default base model (`lema models pretrain-tiny`), and measuring it: training, so
it sits in the trainer (its greedy accuracy goes through lema's one evaluator and the verifier)."""

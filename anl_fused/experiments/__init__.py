"""The paper's experiments, built on the library (``anl_fused``): model zoo, datasets, the training
protocol (``anl-fused train``), figures, FGSM / IFGSM attacks and their transfer matrix, and the demo.

Nothing in the library imports this package; a user of ``insert_anl`` + ``TwoRound`` does not need it.
"""

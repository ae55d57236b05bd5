"""Meta-learning engine: the meta-learned fold-in (``FoldInLearner``), MeLU's model with MAML / first-order
MAML / Meta-SGD (``MetaLearner``), task batching, and the training loop they share.

Imports torch, numpy, pyarrow, safetensors and tqdm only (no pydantic, mlflow or prefect), so training
runs on a bare GPU image.
"""

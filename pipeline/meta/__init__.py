"""Meta-learning engine: MeLU-style model, MAML / first-order MAML / Meta-SGD, task batching, MetaLearner.

Imports torch, numpy, pyarrow, safetensors and tqdm only (no pydantic, mlflow or prefect), so training
runs on a bare GPU image.
"""

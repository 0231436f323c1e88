"""uint8 clips -> scores: R(2+1)D-18 and everything that runs it.

- ``model``: building the network, loading weights, categories, normalisation.
- ``export``: the one ONNX exporter (CPU runtime graph, device graph), cached per weights id.
- ``embeddings``: the pooled 512-d feature beside the logits, in one forward pass.
- ``classifier``: the forward pass (ONNX Runtime on CPU, PyTorch on CUDA), softmax, top-k.
- ``stage``: the Ray classifier actor (a callable class for the actor pool).
- ``demo``: one video's top-5, without Ray.
"""

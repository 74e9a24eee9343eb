"""TensorRT on the target: compatibility check (no TensorRT needed), engine build, engine files.

``check``    onnx-only check that every stage graph parses and builds on TensorRT >= 8.5
``ops``      the operator table it checks against, and which ops are plugin layers per version
``releases`` the TensorRT release of each JetPack, by the short names the commands take
``engines``  where engines live in a bundle and what their json says; version/GPU matching
``profiles`` optimization-profile shapes from the manifest's tiling
``policy``   which graph, flags and quantization mode a stage builds with, per TensorRT version
``calibrator`` calibration-cache lookup and the cache-only INT8 calibrator (TensorRT 8.x)
``fp16``     the FP16 cast of a stage graph that TensorRT >= 11 (strong typing only) builds from
``build``    the thin layer over the TensorRT builder API (imports tensorrt lazily)
``cuda_driver`` the few CUDA driver calls the build and runtime need (device name, graphs)

The runtime backend is :mod:`edgerestore.runtime.backends.tensorrt_backend`.
"""

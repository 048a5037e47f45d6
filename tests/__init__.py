"""recflow's tests. A regular package, not a namespace one: the tf2onnx wheel installs a
top-level ``tests`` package into site-packages, which would otherwise shadow this directory."""

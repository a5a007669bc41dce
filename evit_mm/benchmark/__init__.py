"""The benchmark harness behind ``tools/benchmark.py``: every evit_mm model against what a user would run instead.

Not imported by ``import evit_mm``; timm, onnxruntime, the mm libraries and segment_anything are imported only
where a model or form needs them.  Modules:

  specs       the model zoo: ``MODEL_SPECS`` (evit_mm models, by family) and ``PEER_SPECS`` (comparison points)
  candidates  builds each model's forms (eager, deploy, ONNX; timm's and the peers'), checks their outputs
  timer       interleaved timing windows (:func:`timer.measure_setting`), GPU batch search, load warnings
  runner      runs a selection: one group (a model and the peers beside it) at a time, or all interleaved
  report      paired ratios, markdown tables, JSON and the speed-vs-params plot
  macs        parameter and multiply-accumulate counts
  ort         ONNX forms run in onnxruntime
  machine     what the run ran on
  options     argument types and settings of the CLI
"""

"""The benchmark harness: image sets, measurement, the run loop, edit metrics, reports."""

"""lstmad: real-time LSTM anomaly detection for server metrics.

node_exporter metrics stored in VictoriaMetrics (or Prometheus) are fetched
with PromQL, standard-scaled, scored by an LSTM forecaster, and exposed as
Prometheus metrics where a score above 1 means anomalous.

Importing the package does no work: the modules are loaded on use.
"""

from lstmad._version import __version__

__all__ = ["__version__"]

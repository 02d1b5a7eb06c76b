//! Latency-SLO autoscaling: reads Prometheus, decides replicas, writes `/scale` subresources.

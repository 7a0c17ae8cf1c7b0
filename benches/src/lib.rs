//! Shared helpers for the benchmark targets and throughput binaries.

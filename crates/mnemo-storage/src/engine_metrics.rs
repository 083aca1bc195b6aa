//! SlateDB's internal metrics, published through the [`metrics`] facade.
//!
//! SlateDB measures itself (L0 SST count, immutable memtables, WAL buffer flushes, write
//! backpressure, compactions, object-store requests …) through its own recorder trait. This
//! module bridges that trait to the `metrics` crate, so whatever exporter the process installs
//! (mnemo's `/metrics`, in Prometheus text format) shows them beside mnemo's own series.
//!
//! Names are SlateDB's with dots turned into underscores: `slatedb.db.l0_sst_count` becomes
//! `slatedb_db_l0_sst_count`. Labels are passed through unchanged.

use std::sync::Arc;

use slatedb_common::metrics::{CounterFn, GaugeFn, HistogramFn, MetricsRecorder, UpDownCounterFn};

/// A [`MetricsRecorder`] that registers every SlateDB metric with the `metrics` facade.
#[derive(Debug, Default, Clone, Copy)]
pub struct FacadeRecorder;

/// SlateDB's dotted name as a Prometheus-style metric name.
fn metric_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn metric_labels(labels: &[(&str, &str)]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string()))
        .collect()
}

/// A facade gauge for SlateDB's gauges and up-down counters alike.
fn facade_gauge(name: &str, description: &str, labels: &[(&str, &str)]) -> Arc<Gauge> {
    let name = metric_name(name);
    metrics::describe_gauge!(name.clone(), description.to_string());
    Arc::new(Gauge(metrics::gauge!(name, metric_labels(labels))))
}

struct Counter(metrics::Counter);
struct Gauge(metrics::Gauge);
struct Histogram(metrics::Histogram);

impl CounterFn for Counter {
    fn increment(&self, value: u64) {
        self.0.increment(value);
    }
}

impl GaugeFn for Gauge {
    fn set(&self, value: i64) {
        self.0.set(value as f64);
    }
}

impl UpDownCounterFn for Gauge {
    fn increment(&self, value: i64) {
        self.0.increment(value as f64);
    }
}

impl HistogramFn for Histogram {
    fn record(&self, value: f64) {
        self.0.record(value);
    }
}

impl MetricsRecorder for FacadeRecorder {
    fn register_counter(
        &self,
        name: &str,
        description: &str,
        labels: &[(&str, &str)],
    ) -> Arc<dyn CounterFn> {
        let name = metric_name(name);
        metrics::describe_counter!(name.clone(), description.to_string());
        Arc::new(Counter(metrics::counter!(name, metric_labels(labels))))
    }

    fn register_gauge(
        &self,
        name: &str,
        description: &str,
        labels: &[(&str, &str)],
    ) -> Arc<dyn GaugeFn> {
        facade_gauge(name, description, labels)
    }

    fn register_up_down_counter(
        &self,
        name: &str,
        description: &str,
        labels: &[(&str, &str)],
    ) -> Arc<dyn UpDownCounterFn> {
        // The facade's gauge moves both ways, so it serves as the up-down counter too.
        facade_gauge(name, description, labels)
    }

    fn register_histogram(
        &self,
        name: &str,
        description: &str,
        labels: &[(&str, &str)],
        _boundaries: &[f64],
    ) -> Arc<dyn HistogramFn> {
        let name = metric_name(name);
        metrics::describe_histogram!(name.clone(), description.to_string());
        Arc::new(Histogram(metrics::histogram!(name, metric_labels(labels))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_become_prometheus_names() {
        assert_eq!(
            metric_name("slatedb.db.l0_sst_count"),
            "slatedb_db_l0_sst_count"
        );
        assert_eq!(
            metric_name("slatedb.oc-cache.hits"),
            "slatedb_oc_cache_hits"
        );
    }
}

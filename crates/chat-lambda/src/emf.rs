//! The chat's counters on Lambda, as CloudWatch Embedded Metric Format log lines.
//!
//! The chat core counts through the `metrics` facade (messages stored, deliveries, errors by
//! code, the store's latency); locally they are rendered for Prometheus. A function has no
//! endpoint to scrape and should make no extra API call per invocation, so here a recorder keeps
//! them in memory and, after each invocation, [`EmfRecorder::flush`] writes what the invocation
//! counted as EMF documents on stdout: CloudWatch Logs turns each into metrics, in the
//! `METRICS_NAMESPACE` namespace with the dimension `Function` (and the counter's labels, such as
//! `code`, as more dimensions). The format: "Specification: Embedded metric format", Amazon
//! CloudWatch User Guide.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use serde_json::{Map, Value, json};

/// At most this many values of one histogram in one document (EMF's limit).
const MAX_VALUES: usize = 100;

/// Counters and histograms of this container, since the last flush. Clones share them (one is
/// the process's recorder, another flushes).
#[derive(Default, Clone)]
pub struct EmfRecorder(Arc<Counted>);

#[derive(Default)]
struct Counted {
    counters: Mutex<BTreeMap<Key, Arc<AtomicCounter>>>,
    histograms: Mutex<BTreeMap<Key, Arc<Samples>>>,
}

#[derive(Default)]
struct AtomicCounter(AtomicU64);

impl CounterFn for AtomicCounter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
    }
}

impl Recorder for EmfRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self
            .0
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Counter::from_arc(counters.entry(key.clone()).or_default().clone())
    }

    /// No gauge is counted on Lambda (connections are API Gateway's).
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self
            .0
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Histogram::from_arc(histograms.entry(key.clone()).or_default().clone())
    }
}

impl EmfRecorder {
    /// What was counted since the last flush, as EMF documents (one per set of labels), and
    /// resets it: nothing when nothing was counted. `now_ms` is the documents' timestamp.
    pub fn flush(&self, namespace: &str, function: &str, now_ms: u64) -> Vec<String> {
        // Labels (sorted) -> metric name -> value.
        let mut documents: BTreeMap<Vec<(String, String)>, Map<String, Value>> = BTreeMap::new();
        let labels_of = |key: &Key| {
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            labels.sort();
            labels
        };
        for (key, counter) in self
            .0
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let value = counter.0.swap(0, Ordering::Relaxed);
            if value > 0 {
                documents
                    .entry(labels_of(key))
                    .or_default()
                    .insert(key.name().to_owned(), json!(value));
            }
        }
        for (key, samples) in self
            .0
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let mut values =
                std::mem::take(&mut *samples.0.lock().unwrap_or_else(PoisonError::into_inner));
            // One invocation stores a message or two; past EMF's 100 values, the latest.
            if values.len() > MAX_VALUES {
                values.drain(..values.len() - MAX_VALUES);
            }
            if !values.is_empty() {
                documents
                    .entry(labels_of(key))
                    .or_default()
                    .insert(key.name().to_owned(), json!(values));
            }
        }
        documents
            .into_iter()
            .map(|(labels, values)| {
                let mut dimensions = vec!["Function".to_owned()];
                dimensions.extend(labels.iter().map(|(name, _)| name.clone()));
                let metrics: Vec<Value> = values
                    .keys()
                    .map(|name| json!({"Name": name, "Unit": unit_of(name)}))
                    .collect();
                let mut document = Map::new();
                document.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": [dimensions],
                            "Metrics": metrics,
                        }],
                    }),
                );
                document.insert("Function".into(), json!(function));
                for (name, value) in labels {
                    document.insert(name, json!(value));
                }
                document.extend(values);
                Value::Object(document).to_string()
            })
            .collect()
    }
}

/// CloudWatch's unit of a metric: the chat's histograms are in seconds, its counters counts.
fn unit_of(name: &str) -> &'static str {
    if name.ends_with("_seconds") {
        "Seconds"
    } else {
        "Count"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document_per_label_set_with_what_was_counted_since_the_last_flush() {
        let recorder = EmfRecorder::default();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("chat_messages_stored_total").increment(2);
            metrics::counter!("chat_deliveries_total").increment(7);
            metrics::counter!("chat_errors_total", "code" => "forbidden").increment(1);
            metrics::histogram!("chat_message_store_seconds").record(0.012);
            metrics::histogram!("chat_message_store_seconds").record(0.034);
        });
        let documents: Vec<Value> = recorder
            .flush("chat-prod", "message", 1_795_000_000_000)
            .iter()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        assert_eq!(documents.len(), 2, "{documents:?}");
        let plain = &documents[0];
        let mut directive = plain["_aws"].clone();
        let mut metrics: Vec<Value> = directive["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .clone();
        metrics.sort_by_key(|metric| metric["Name"].as_str().unwrap().to_owned());
        directive["CloudWatchMetrics"][0]["Metrics"] = json!(metrics);
        assert_eq!(
            directive,
            json!({
                "Timestamp": 1_795_000_000_000_u64,
                "CloudWatchMetrics": [{
                    "Namespace": "chat-prod",
                    "Dimensions": [["Function"]],
                    "Metrics": [
                        {"Name": "chat_deliveries_total", "Unit": "Count"},
                        {"Name": "chat_message_store_seconds", "Unit": "Seconds"},
                        {"Name": "chat_messages_stored_total", "Unit": "Count"},
                    ],
                }],
            })
        );
        assert_eq!(plain["Function"], "message");
        assert_eq!(plain["chat_messages_stored_total"], 2);
        assert_eq!(plain["chat_deliveries_total"], 7);
        assert_eq!(plain["chat_message_store_seconds"], json!([0.012, 0.034]));
        let errors = &documents[1];
        assert_eq!(
            errors["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function", "code"]])
        );
        assert_eq!(errors["code"], "forbidden");
        assert_eq!(errors["chat_errors_total"], 1);
        // Flushed: nothing more until something is counted again.
        assert!(recorder.flush("chat-prod", "message", 0).is_empty());
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("chat_messages_stored_total").increment(1);
        });
        let again = recorder.flush("chat-prod", "message", 0);
        assert_eq!(again.len(), 1);
        assert!(
            again[0].contains(r#""chat_messages_stored_total":1"#),
            "{}",
            again[0]
        );
    }
}

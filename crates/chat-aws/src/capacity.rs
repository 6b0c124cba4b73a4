//! A meter of DynamoDB calls and the capacity units they consumed.
//!
//! With a [`Meter`], the stores ask every call for `ReturnConsumedCapacity: TOTAL` and add up what
//! DynamoDB reports, per operation: that is how the README's cost of a `sendMessage` is measured.
//! Without one (the default), nothing is asked or counted.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use aws_sdk_dynamodb::types::ConsumedCapacity;

/// Whether an operation reads or writes: with `TOTAL`, DynamoDB reports one number per call and
/// the operation says which kind of unit it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    Read,
    Write,
}

/// What was counted since the last [`Meter::take`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Calls per operation name (`GetItem`, `Query`, ...).
    pub calls: BTreeMap<&'static str, u32>,
    pub read_units: f64,
    pub write_units: f64,
}

impl Tally {
    pub fn total_calls(&self) -> u32 {
        self.calls.values().sum()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let calls: Vec<String> = self
            .calls
            .iter()
            .map(|(op, n)| format!("{op} x{n}"))
            .collect();
        write!(
            f,
            "{} calls ({}), {} RCU, {} WCU",
            self.total_calls(),
            calls.join(", "),
            self.read_units,
            self.write_units
        )
    }
}

/// Counts DynamoDB calls and consumed capacity; shared by the stores that report to it.
#[derive(Debug, Default)]
pub struct Meter {
    // A plain mutex: each update is a few additions, never held across an await.
    tally: Mutex<Tally>,
}

impl Meter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record<'a>(
        &self,
        operation: &'static str,
        units: Units,
        consumed: impl IntoIterator<Item = &'a ConsumedCapacity>,
    ) {
        let total: f64 = consumed
            .into_iter()
            .filter_map(ConsumedCapacity::capacity_units)
            .sum();
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        *tally.calls.entry(operation).or_default() += 1;
        match units {
            Units::Read => tally.read_units += total,
            Units::Write => tally.write_units += total,
        }
    }

    /// What was counted so far; the meter starts again from zero.
    pub fn take(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

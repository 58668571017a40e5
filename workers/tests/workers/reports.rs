//! Delivery report tests.

//! Delivery signals (being written).

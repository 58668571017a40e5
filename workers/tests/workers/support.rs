//! Shared helpers (owned by the dispatch tests).

//! Workers: the processes that follow the log and act on the world (SMTP dispatch, timers,
//! outbound webhooks), recording what they did as new events.
//!
//! Nothing lives here yet: the first worker, SMTP dispatch, arrives with the send pipeline.

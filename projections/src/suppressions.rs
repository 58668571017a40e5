//! Suppressions read model (being written).
use eventlog::RecordedEvent;

use crate::error::Result;
use crate::model::{ModelRead, ModelWrite};
use crate::runner::Projector;

pub const NAME: &str = "suppressions";

pub struct SuppressionsProjector;

impl Projector for SuppressionsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, _e: &RecordedEvent, _model: &mut ModelWrite<'_>) -> Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
pub struct SuppressionsRead {
    #[allow(dead_code)]
    model: ModelRead,
}

impl SuppressionsRead {
    pub fn new(model: ModelRead) -> Self {
        SuppressionsRead { model }
    }
}

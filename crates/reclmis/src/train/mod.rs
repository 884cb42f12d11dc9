//! Training (docs §2): the run's config ([`config`]) and the loop that runs it ([`trainer`]);
//! batches and the step itself live in [`crate::step`], shared with evaluation and the benchmark.

pub mod adam;
pub mod config;
pub mod trainer;

pub use config::{LrSchedule, TrainConfig};
pub use trainer::{EpochMetrics, Event, RunPaths, StepGradients, TrainError, Trainer, validate};

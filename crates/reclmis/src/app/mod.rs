//! The application layer: what each command decides, without argument parsing or printing.
//!
//! The command line (`reclmis-cli`), and any other front end (an HTTP server, Python bindings),
//! turn their inputs into the plain requests here and present the results; every rule about how
//! a config is assembled, which weights a run starts from, or how a file is imported lives here
//! once.

pub mod config;
pub mod import;
pub mod runs;
pub mod session;

pub use config::{ConfigLayer, TrainOverrides, check_image_size, merged_config, train_config};
pub use import::{Imported, import};
pub use runs::{initial_model, load_split, load_splits, synth_split};
pub use session::{
    EvalOutcome, EvalRequest, NotesAs, TrainOutcome, TrainProgress, TrainRequest, evaluate_split,
    evaluate_split_on, load_model, train, train_on,
};

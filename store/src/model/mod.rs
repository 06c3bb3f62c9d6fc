//! The management API's data: [`resources`] (what it answers), [`requests`]
//! (the bodies it accepts) and [`validation`] (the checks of those bodies).
//! Everything is re-exported here, so `crate::model::X` names any of them.

pub mod requests;
pub mod resources;
pub mod validation;

pub use requests::*;
pub use resources::*;
pub use validation::*;

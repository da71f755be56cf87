//! The compiled rule set of one project (placeholder module, filled in next).

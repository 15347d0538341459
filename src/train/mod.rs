//! Training: optimisers, learning-rate schedules.

//! Airlock policy model (grown by the policy issue).

//! Ferry dataplane.

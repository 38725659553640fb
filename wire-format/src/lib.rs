//! Ferry wire format.

//! Networking between AGAD levels (being written).

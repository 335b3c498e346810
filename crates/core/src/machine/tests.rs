//! Tests of the state machine: they assert on actions and state, with no I/O.

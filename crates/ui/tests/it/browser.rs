//! The viewer in a real browser: placeholder replaced below.

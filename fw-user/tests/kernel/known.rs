//! Directed cases (filled below).

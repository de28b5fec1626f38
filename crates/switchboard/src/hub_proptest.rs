//! Property tests of the registry (issue 7 fills this in).

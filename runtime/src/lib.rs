//! Airlock runtime: process backend on libcontainer.

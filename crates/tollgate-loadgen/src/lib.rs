//! Tollgate's load generator and benchmark harness: [`load`] sends open-loop
//! fixed-rate load and measures from the schedule, [`bench`] runs the
//! direct-versus-through-Tollgate comparison behind `bench/run`, [`procfs`]
//! and [`procs`] read and manage the processes under test, [`scaleout`]
//! measures replicas on PostgreSQL and Redis, [`reference`] runs nginx as the
//! plain reverse proxy each step is also read against, [`report`] prints the
//! figures.

pub mod bench;
pub mod load;
pub mod procfs;
pub mod procs;
pub mod reference;
pub mod report;
pub mod scaleout;

//! The environment's runtime panel and the dashboard's drift badge.

//! Routing to agents on other replicas.

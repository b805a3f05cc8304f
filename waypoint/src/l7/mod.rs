//! L7 decisions, free of I/O: each module takes the controller's configuration
//! (`ambient_proto::ambient::waypoint::v1`) and a request's parts and says what to do.

/* A dependency of the fake ncclNet plugin built with -DUSE_DEP, found through $ORIGIN:
 * tcpx's loader must make a private copy of the plugin bind to it (tests/loader.rs). */
int fake_dep_answer(void) { return 42; }

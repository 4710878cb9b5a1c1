/* The NCCL logger handed to ncclNet plugins by tcpx.
 *
 * NCCL's logger is C-variadic (printf-style), which stable Rust cannot define. This shim
 * formats the message into a stack buffer and passes level, flags, file, line and the text
 * to a sink installed once by the Rust side (tcpx::log). No allocation, no locks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

typedef void (*tcpx_log_sink_fn)(int level, unsigned long flags, const char *file, int line,
                                 const char *msg, size_t len);

/* Set once before any plugin sees the logger; read on every call. */
static tcpx_log_sink_fn tcpx_log_sink;

void tcpx_log_shim_install(tcpx_log_sink_fn sink) {
    __atomic_store_n(&tcpx_log_sink, sink, __ATOMIC_RELEASE);
}

void tcpx_log_shim_logger(int level, unsigned long flags, const char *file, int line,
                          const char *fmt, ...) {
    tcpx_log_sink_fn sink = __atomic_load_n(&tcpx_log_sink, __ATOMIC_ACQUIRE);
    if (sink == NULL || fmt == NULL) {
        return;
    }
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    size_t len;
    if (n < 0) {
        len = 0;
        buf[0] = '\0';
    } else if ((size_t)n >= sizeof buf) {
        /* Truncated: say so rather than cut a message silently. */
        len = sizeof buf - 1;
        memcpy(buf + len - 3, "...", 3);
    } else {
        len = (size_t)n;
    }
    sink(level, flags, file, line, buf, len);
}

/* The swarm's per-delivery accounting, in C: loadtest.engine.Swarm.on_delivery's fast path.
 *
 * count(frame, hot, local, streams, buckets) finds the tag `hot` ("RUN:PHASE: ...) in a
 * delivered frame, parses STREAM:SEQ:SENT_NS after it (digits only, ended by a quote), records
 * the latency (now - SENT_NS, in µs, quantized to 11 significant bits) in `buckets`
 * ({value: count}) and advances the stream's watermark in `streams` when the delivery is the
 * next one expected. It returns:
 *   an int > 0      handled; the int is the receive time (ns since the epoch)
 *   (now, key, seq) latency recorded; the stream needs loadtest.stats.Accounting.place
 *   -1              no tag for this phase (a late or foreign delivery)
 *   -2              a tag that does not parse
 * It mirrors the pure-Python path in loadtest/engine.py exactly, which stays the reference
 * (and the fallback where this module was not built); tests/loadtest/test_fastcount.py
 * compares the two.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

#define SIG_BITS 11
#define EXACT_BELOW (1LL << SIG_BITS)

/* Parse ASCII digits from p up to (not including) `end` char; 0 on success. */
static int
parse_digits(const char **pp, const char *limit, char end, long long *out)
{
    const char *p = *pp;
    long long v = 0;
    int n = 0;
    while (p < limit && *p != end) {
        char c = *p;
        if (c < '0' || c > '9' || n >= 19) {
            return -1;
        }
        v = v * 10 + (c - '0');
        p++;
        n++;
    }
    if (n == 0 || p >= limit) {
        return -1;
    }
    *pp = p + 1;
    *out = v;
    return 0;
}

static int
bump_bucket(PyObject *buckets, long long lat)
{
    PyObject *key = PyLong_FromLongLong(lat);
    if (key == NULL) {
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(buckets, key); /* borrowed */
    long long n = 1;
    if (old != NULL) {
        n = PyLong_AsLongLong(old) + 1;
        if (n == 0 && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *val = PyLong_FromLongLong(n);
    if (val == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int rc = PyDict_SetItem(buckets, key, val);
    Py_DECREF(key);
    Py_DECREF(val);
    return rc;
}

static PyObject *
count(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "count(frame, hot, local, streams, buckets)");
        return NULL;
    }
    PyObject *frame = args[0], *hot = args[1], *streams = args[3], *buckets = args[4];
    if (!PyBytes_Check(frame) || !PyBytes_Check(hot) || !PyDict_Check(streams) ||
        !PyDict_Check(buckets)) {
        PyErr_SetString(PyExc_TypeError, "count(bytes, bytes, int, dict, dict)");
        return NULL;
    }
    long long local = PyLong_AsLongLong(args[2]);
    if (local == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(frame);
    Py_ssize_t size = PyBytes_GET_SIZE(frame);
    const char *tag = PyBytes_AS_STRING(hot);
    Py_ssize_t tag_len = PyBytes_GET_SIZE(hot);
    if (tag_len == 0 || tag_len > size) {
        return PyLong_FromLong(-1);
    }
    const char *at = memmem(data, (size_t)size, tag, (size_t)tag_len);
    if (at == NULL) {
        return PyLong_FromLong(-1);
    }
    const char *p = at + tag_len;
    const char *limit = data + size;
    long long stream, seq, sent;
    if (parse_digits(&p, limit, ':', &stream) || parse_digits(&p, limit, ':', &seq) ||
        parse_digits(&p, limit, '"', &sent) || stream > 0xFFFFFFFFLL) {
        return PyLong_FromLong(-2);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    long long lat = now >= sent ? (now - sent) / 1000 : 0;
    if (lat >= EXACT_BELOW) {
        int shift = 0;
        long long v = lat;
        while (v >= EXACT_BELOW) {
            v >>= 1;
            shift++;
        }
        lat = v << shift;
    }
    if (bump_bucket(buckets, lat) < 0) {
        return NULL;
    }
    PyObject *key = PyLong_FromLongLong((local << 32) | stream);
    if (key == NULL) {
        return NULL;
    }
    PyObject *st = PyDict_GetItemWithError(streams, key); /* borrowed */
    if (st == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    if (st != NULL && PyList_CheckExact(st) && PyList_GET_SIZE(st) == 3 &&
        PyList_GET_ITEM(st, 2) == Py_None) {
        long long wm = PyLong_AsLongLong(PyList_GET_ITEM(st, 0));
        if (wm == -1 && PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
        if (wm == seq) {
            PyObject *next = PyLong_FromLongLong(seq + 1);
            PyObject *high = PyLong_FromLongLong(seq);
            if (next == NULL || high == NULL) {
                Py_XDECREF(next);
                Py_XDECREF(high);
                Py_DECREF(key);
                return NULL;
            }
            PyList_SetItem(st, 0, next); /* steals; releases the old item */
            PyList_SetItem(st, 1, high);
            Py_DECREF(key);
            return PyLong_FromLongLong(now);
        }
    }
    PyObject *out = Py_BuildValue("(LNL)", now, key, seq); /* N: steals key */
    return out;
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
     "count(frame, hot, local, streams, buckets): one delivery's accounting (see module doc)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "loadtest._fastcount",
    "The swarm's per-delivery accounting, in C (optional; loadtest.engine falls back to Python).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastcount(void)
{
    return PyModule_Create(&module);
}

package reslimit

import "io"

// LimitReader returns a reader that reads from r and records the size of
// the stream read so far as the largest file size seen (Usage's
// LargestFileBytes), as CheckFileSize does. With MaxFileSize set it fails
// with a *LimitError{Resource: FileSize} once the stream passes the limit:
// it returns the bytes up to the limit, then the error instead of the bytes
// beyond. A stream of exactly MaxFileSize bytes reads to io.EOF as usual.
// After the tracker's End it returns ErrClosed. With a nil tracker it
// returns r itself. The reader is not safe for concurrent use (like most
// readers).
func (t *Tracker) LimitReader(r io.Reader) io.Reader {
	if t == nil {
		return r
	}
	return &limitedReader{t: t, r: r}
}

// LimitWriter returns a writer that writes to w and records the size of
// the stream written so far as the largest file size seen, as
// CheckFileSize does. With MaxFileSize set it fails with a
// *LimitError{Resource: FileSize} once the stream would pass the limit: a
// write that crosses the limit writes only the bytes up to it and returns
// the error, and nothing past the limit is ever written. After the
// tracker's End it returns ErrClosed. With a nil tracker it returns w
// itself.
func (t *Tracker) LimitWriter(w io.Writer) io.Writer {
	if t == nil {
		return w
	}
	return &limitedWriter{t: t, w: w}
}

type limitedReader struct {
	t   *Tracker
	r   io.Reader
	n   int64 // bytes returned so far
	err error // sticky limit error
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if l.t.closed.Load() {
		return 0, ErrClosed
	}
	lim := l.t.limits.MaxFileSize
	if lim == 0 {
		n, err := l.r.Read(p)
		l.count(n)
		return n, err
	}
	left := lim - l.n
	// Read one byte more than fits, to tell "exactly at the limit" from
	// "past it".
	if int64(len(p)) > left+1 {
		p = p[:left+1]
	}
	var probe [1]byte
	buf := p
	if left == 0 && len(p) > 0 {
		buf = probe[:]
	}
	n, err := l.r.Read(buf)
	if int64(n) > left {
		l.err = &LimitError{Resource: FileSize, Limit: lim, Used: lim, Requested: int64(n) - left}
		l.t.refused[FileSize].Add(1)
		l.t.noteFile(lim)
		if left == 0 {
			return 0, l.err
		}
		l.n = lim
		return int(left), l.err
	}
	l.count(n)
	return n, err
}

// count adds n bytes to the stream's size and records it.
func (l *limitedReader) count(n int) {
	if n > 0 {
		l.n = satAdd(l.n, int64(n))
		l.t.noteFile(l.n)
	}
}

type limitedWriter struct {
	t   *Tracker
	w   io.Writer
	n   int64
	err error
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if l.t.closed.Load() {
		return 0, ErrClosed
	}
	lim := l.t.limits.MaxFileSize
	if lim == 0 || int64(len(p)) <= lim-l.n {
		n, err := l.w.Write(p)
		l.count(n)
		return n, err
	}
	left := lim - l.n
	le := &LimitError{Resource: FileSize, Limit: lim, Used: l.n, Requested: int64(len(p))}
	l.t.refused[FileSize].Add(1)
	n, err := l.w.Write(p[:left])
	l.count(n)
	if err != nil {
		return n, err
	}
	l.err = le
	return n, le
}

// count adds n bytes to the stream's size and records it.
func (l *limitedWriter) count(n int) {
	if n > 0 {
		l.n = satAdd(l.n, int64(n))
		l.t.noteFile(l.n)
	}
}

package broker

import (
	"io"
	"net"
	"sync"
)

type closeWriter interface{ CloseWrite() error }

// Splice copies between a user's connection and a device stream until both
// directions end, passing half-closes on. buffered holds bytes already
// read from client (an HTTP server's buffer after a hijack); nil for none.
// It returns the bytes sent to the device and back, and why the device's
// side failed (nil when it ended normally). When the device's side fails
// (the device did not come back within the hold time, say), it calls
// devFailed (when not nil) and then closes the user's connection at once.
func Splice(client net.Conn, buffered io.Reader, dev net.Conn, devFailed func(error)) (up, down int64, devErr error) {
	var src io.Reader = client
	if buffered != nil {
		src = io.MultiReader(buffered, client)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		up, _ = io.Copy(dev, src)
		if cw, ok := dev.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			dev.Close()
		}
	}()
	go func() {
		defer wg.Done()
		var err error
		down, err = io.Copy(client, dev)
		if err != nil {
			devErr = err
			if devFailed != nil {
				devFailed(err)
			}
			client.Close()
			return
		}
		if cw, ok := client.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			client.Close()
		}
	}()
	wg.Wait()
	return up, down, devErr
}

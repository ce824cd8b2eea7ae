// Command arrivals reads its standard input to the end and writes, for
// every read, when it returned and how many bytes it brought, as
// "UNIX_NANOSECONDS BYTES" lines to the file given by -o. linkbench runs it
// on a device, through each system's SSH, to time when an upload's bytes
// arrive there (the device and linkbench share the machine's clock). It is
// a developer tool: nothing imports it.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	out := flag.String("o", "", "`FILE` to write the arrivals to (required)")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: arrivals -o FILE < data")
		os.Exit(2)
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "arrivals:", err)
		os.Exit(1)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	buf := make([]byte, 16<<10)
	for {
		n, err := os.Stdin.Read(buf)
		if n > 0 {
			fmt.Fprintf(w, "%d %d\n", time.Now().UnixNano(), n)
			// Flushed at once: linkbench reads the file while bytes flow.
			if ferr := w.Flush(); ferr != nil {
				fmt.Fprintln(os.Stderr, "arrivals:", ferr)
				os.Exit(1)
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "arrivals:", err)
			os.Exit(1)
		}
	}
}

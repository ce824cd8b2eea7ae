package linksim_test

import (
	"fmt"
	"log"
	"net/netip"
	"time"

	"remoteler.dev/edge/tools/linksim"
)

// A device on LTE with 5% loss behind a NAT that forgets idle mappings after
// 30 s, relaying QUIC to a fleet on 127.0.0.1:3080.
func Example() {
	p, err := linksim.ProfileByName("lte")
	if err != nil {
		log.Fatal(err)
	}
	p = p.Both(func(i *linksim.Impairment) { i.Loss = 0.05 })
	link, err := linksim.New(linksim.Config{Profile: p, Seed: 1, NATTimeout: 30 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer link.Close()
	relay, err := link.ListenUDP("127.0.0.1:0", "127.0.0.1:3080")
	if err != nil {
		log.Fatal(err)
	}
	_ = relay.Addr() // the agent dials this instead of the fleet

	link.Blackout(10 * time.Second) // the tunnel loses the link...
	if err := link.MoveTo(netip.MustParseAddr("127.0.0.2")); err != nil {
		log.Fatal(err) // ...and comes back from another address
	}
	fmt.Println(link.Profile())
	fmt.Println(link.Out())
	// Output:
	// lte: up delay 35ms, jitter 10ms, loss 5%, rate 12mbit, queue 375000B; down delay 35ms, jitter 10ms, loss 5%, rate 12mbit, queue 375000B
	// true
}

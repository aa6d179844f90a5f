package ctwatch

import "testing"

const netDevSample = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   999999     100    0    0    0     0       0          0
  eth0: 5000000    4000    0    0    0     0          0         0 70000000   50000    0    0    0     0       0          0
  ifb0:       0       0    0    0    0     0          0         0      100       1    0    0    0     0       0          0
`

func TestParseNetDev(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    uint64
		wantErr bool
	}{
		{"sample", netDevSample, 70000100, false},
		{"only lo", "h1\nh2\n    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n", 0, false},
		{"empty", "", 0, true},
		{"short line", "eth0: 1 2 3\n", 0, true},
		{"not a number", "eth0: 1 2 3 4 5 6 7 8 x 10\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNetDev([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ParseNetDev = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func FuzzParseNetDev(f *testing.F) {
	f.Add([]byte(netDevSample))
	f.Add([]byte("eth0: 1 2 3 4 5 6 7 8 9\n"))
	f.Add([]byte(":::\n:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseNetDev(b)
	})
}

// A Java client for tests/runtimes.rs: GET URL with `Authorization: Bearer TOKEN` through
// java.net.http.HttpClient, trusting only what the JVM trusts (its cacerts, or the
// javax.net.ssl.trustStore netcage sets in JAVA_TOOL_OPTIONS), through the proxy the JVM's
// default ProxySelector finds (https.proxyHost in Tier 0; none in Tier 1).
//
// Usage: java Main.java URL TOKEN
// Prints `status BODY`, then `marker=` and the system property netcage.test.marker (set by the
// test's own JAVA_TOOL_OPTIONS, which netcage must keep); on an exception prints
// `error CLASS: MESSAGE` and exits 3.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Main {
    public static void main(String[] args) {
        try {
            HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(20)).build();
            HttpRequest request = HttpRequest.newBuilder(URI.create(args[0]))
                    .header("Authorization", "Bearer " + args[1])
                    .timeout(Duration.ofSeconds(20))
                    .GET()
                    .build();
            HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
            System.out.println(response.statusCode() + " " + response.body());
            System.out.println("marker=" + System.getProperty("netcage.test.marker"));
        } catch (Exception e) {
            System.out.println("error " + e.getClass().getName() + ": " + e.getMessage());
            System.exit(3);
        }
    }
}

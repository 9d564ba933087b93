from travel.service import service

service.main()
